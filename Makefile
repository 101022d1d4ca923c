# The two commands a new user needs:
#   make serve   install and start the service on its embedded defaults
#   make test    install what the tests need and run them
.PHONY: serve test lint

serve:
	scripts/setup.sh
	.venv/bin/pneumotriage serve

test:
	scripts/setup.sh --test
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -ra --durations=15

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
