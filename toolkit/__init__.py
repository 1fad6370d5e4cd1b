"""The course's toolkit: what the tests, the exercises, the bench and the notebooks share.

- course: the course described once (steps.toml), for Python and for make;
- checks: a step's tests run on a copy of the step, and each test's outcome (make check, the
  exercise prover);
- progress: the learner's exercise commands (make exercises, exercise, check, watch, solution);
- launcher: run a step as a learner does (a process on a free port, stopped by its PID), load a
  step's app in this process, a private Redis;
- stack: step 09's whole stack (nginx, two app servers, Redis) as `make step-09` runs it;
- clients: chat clients spoken by hand (WebSocket frames, Socket.IO over a plain WebSocket);
- inprocess: steps 07 and 08 made in the test's own process (Flask's and Flask-SocketIO's test
  clients), standing where a server would;
- people: accounts and rooms of steps 07 to 09 over HTTP;
- pages: what a browser test checks on a page, and people on the pages of steps 07 to 09;
- pictures: the checks every state of a page gets (axe-core, the keyboard) and its pictures;
- jobs: the jobs of steps 06 and 09, over HTTP and on the page;
- loadgen and bench: the load generator and what the bench measures;
- fixtures: the pytest plugin that tests/ and exercises/ load.

The steps never import it: a learner can copy one step's folder and run it.
"""
