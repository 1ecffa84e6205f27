"""segpipe's streaming runtime: config, decoders, batching, device stage, sinks, supervisor,
metrics and the CLI. May import ``engines``; ``engines`` never imports this package."""
