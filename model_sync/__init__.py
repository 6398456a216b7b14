"""Keeps a local model repository in step with a remote model path (WebHDFS, HttpFS, HTTP, file)."""
