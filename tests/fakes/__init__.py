"""Test peers for the syncer: WebHDFS / HttpFS servers, an alarm webhook receiver, nginx."""
