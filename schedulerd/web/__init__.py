"""The operator's console: web pages for tasks and jobs, their live log, and /metrics ([http]).

Off unless `[http] listen` is set; the daemon then imports `server.serve_console` (Starlette and
uvicorn are imported only then). `settings` stays light: the config loader imports it."""
