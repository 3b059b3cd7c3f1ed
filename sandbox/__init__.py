"""The sandbox: runs next to the raw data, in its own process, and releases only noisy aggregates.

What crosses its boundary is defined in `sandbox.protocol` (plans in, noisy releases out). The gateway imports only
the boundary packages (the protocol, the pure plan and pricing rules, the socket client, the errors, the catalog
parser, the owner's caps: docs/architecture.md); it never imports the engine or the products, which only ever run
inside the sandbox process.
"""
