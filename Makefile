# Convenience aliases; ./dev is the entry point (it needs no make on a fresh machine).
.PHONY: up test bench setup
up: ; ./dev up
test: ; ./dev test
bench: ; ./dev bench
setup: ; ./dev setup
