"""The local launcher and the test harness: not part of the shipped package or the production image.

`launcher` starts the real stack (nginx + gunicorn, and redis-server where asked) as `make run` does;
`harness` starts throwaway stacks on free loopback ports for the tests, `make perf` and `make chaos`.

Imports: `service` (its settings and start command); nothing in `service` imports this package."""
