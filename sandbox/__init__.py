"""The sandbox: runs next to the raw data, in its own process, and releases only noisy aggregates.

What crosses its boundary is defined in `sandbox.protocol.messages` (plans in, noisy releases out). The gateway may
import `sandbox.protocol.messages`, `sandbox.pricing.mechanisms` (pricing), `sandbox.client` and `sandbox.errors`;
it never
imports the engine, which only ever runs inside the sandbox process.
"""
