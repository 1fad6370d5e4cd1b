"""gunicorn's settings, the same for both app servers; the Procfile gives each its PORT."""

import os
import resource

bind = f"127.0.0.1:{os.environ['PORT']}"  # only nginx, on this machine, talks to it
# gevent: every connection (a page's socket, a job's stream, a request) is a greenlet, so one
# process holds thousands. gunicorn monkey-patches the standard library before it loads the app,
# so that Redis' client, time.sleep and threading cooperate. Flask-SocketIO speaks WebSocket on
# gevent with simple-websocket: gevent-websocket is not needed.
worker_class = "gevent"
# One worker: the server you stop and start in a rolling restart is one process, and each page
# shows which one it landed on. (More workers would work too: WebSocket only, through Redis.)
workers = 1
# Sockets one worker serves at once (gevent's pool; gunicorn's default is 1000). In a rolling
# restart every page moves to the other server, so each holds all 10,000 (the course's
# bench/capacity.md), plus requests and streams.
worker_connections = 12_000
# Each socket is an open file. A process may raise its own soft limit up to its hard limit, so
# the server does, before the worker starts (which inherits it). Under systemd, LimitNOFILE=
# sets both; without it a service gets 1024 soft (about 1,000 pages) and 524288 hard.
open_files = worker_connections + 1000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft != resource.RLIM_INFINITY and soft < open_files:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(open_files, hard), hard))
# A worker that does not check in with gunicorn for this long is killed: it means the event loop
# is blocked (CPU-bound code, a call gevent cannot patch). A quiet socket does not count.
timeout = 30
# On SIGTERM the server stops accepting at once, lets what is running go on for this long, then
# cuts the rest. Sockets and streams never finish by themselves: a short wait moves their pages
# to the other server sooner (and honcho, on Ctrl-C, kills whatever is left after 5 s).
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "3"))
# gunicorn 25.1+ opens a control socket at one fixed path per user: two servers would share it.
control_socket_disable = True
