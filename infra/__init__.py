"""Infrastructure: settings, service discovery, the Redis connection and the database engine; imports nothing of kbchat."""
