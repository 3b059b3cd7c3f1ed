"""What crosses the trust boundary: the declared wire schema between gateway and sandbox.

Every type that crosses is a frozen msgspec Struct declared here; the declarations are the schema, and
msgspec encodes and decodes them (strict JSON: unknown fields, unknown types and wrong types are refused).

* `base`: the strict record base, the message envelope, `ProtocolError`, `MAX_FRAME_BYTES`.
* `plan`: the query plan (a closed set of expression and FROM-tree node types) and its canonical JSON.
* `catalog`: the public catalog. `release`: noisy releases and their costs.
* `models`, `verification`, `owner`: the model, verification and data-owner messages.
* `messages`: the request and reply envelopes, the closed registry (`REQUESTS`, `REPLIES`), the decoders.
* `wire`: the frame format (4-byte length, JSON body) and the strict decoder.
"""
