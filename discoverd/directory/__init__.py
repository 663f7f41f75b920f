"""The cluster directory: what every face (v2 HTTP, v3 gRPC, DNS, certificates, the member API)
shares. Token lookup, registration, read-your-writes and waits, and the naming rules. No face
imports another; they all stand on this."""
