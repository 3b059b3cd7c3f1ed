"""The RPC surface: every call enters here, is authenticated, admitted and audited, then handed to its body.

- `methods`: the access rule of every RPC the server answers (a method without one is refused).
- `interceptor`: the one layer every call passes before its handler (identity, role, revocation,
  deadline, admission, one audit entry per call, errors as `google.rpc.Status` with ErrorInfo).
- `admission`: per-identity concurrency limits and a bounded wait queue.
- `status`: the mapping from `gateway.errors` to gRPC statuses.
- `calls`: `Call`, what one call carries through the governed path.
"""
