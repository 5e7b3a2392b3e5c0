"""Security of the gRPC listener: TLS, who is calling, and what they may do (issue 10).

Being wired in: nothing here is used by `gateway.server` yet. The parts, each small:

- `files`: files re-read when they change (certificates, token and key files, the policy);
  a broken new file is logged and the last good value stays.
- `tls`: server credentials from PEM files; TLS, or mTLS when a client CA is set.
- `principal`: `Principal` (name, roles, how authenticated) and the UNAUTHENTICATED /
  PERMISSION_DENIED statuses with a `google.rpc.ErrorInfo` (domain `jetgate`).
- `peer`, `tokens`, `jwts`: principals from the mTLS client certificate, static API tokens
  (SHA-256 hashes compared in constant time) and JWTs (PyJWT, asymmetric keys only).
- `authenticator`: one call that turns a call's metadata and TLS peer into a `Principal`.
- `interceptor`: a grpc.aio server interceptor that authenticates every call (health always
  open, reflection per setting) and leaves the principal in a `ContextVar`.
- `policy`: grants of publish/subscribe/read/admin on globs to principals and roles;
  default deny.
"""
