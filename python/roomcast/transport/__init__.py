"""Bytes on the socket: the picows adapter (`connection`), the listening socket and HTTP
(`http`), the opening handshake's checks (`upgrade`), TLS (`tls`) and what the listener needs
of a node (`ports`)."""
