"""The web console: server-rendered pages over mTLS, every figure through the governed RPCs (`gateway.rpc.local`)."""
