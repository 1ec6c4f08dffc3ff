# Convenience aliases; ./dev is the entry point (it needs no make on a fresh machine).
.PHONY: up down test test-ui bench setup
up: ; ./dev up
down: ; ./dev down
test: ; ./dev test
test-ui: ; ./dev test-ui
bench: ; ./dev bench
setup: ; ./dev setup
