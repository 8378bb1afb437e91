"""Streams, host/moderator controls, media, the application factory and the `livesale` command."""
