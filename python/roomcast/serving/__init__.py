"""Running a node: until a signal (`runner`), as N worker processes (`workers`), with
Prometheus metrics (`metrics`) and the /health and /metrics endpoints (`endpoints`)."""
