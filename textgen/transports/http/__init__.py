"""Flask transports: thin routes over validate -> engine.submit -> shape the response."""
