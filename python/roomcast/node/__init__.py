"""The node: `WebSocketServerHelper` (`server`) and the parts it owns (authentication,
rooms, delivery, history, presence, the join barrier), with its callbacks' keywords."""
