"""gunicorn's settings for the bench: the step READMEs' command, on the bench's free port."""

import os

bind = f"{os.environ['HOST']}:{os.environ['PORT']}"
workers = 1  # the room (its clients, its history) lives in the memory of one process
control_socket_disable = True  # several benched servers in a row must not share its socket
