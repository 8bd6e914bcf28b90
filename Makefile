# The two commands of the README, and what they need.
.PHONY: setup demo test lint

setup:
	scripts/setup.sh

demo: setup
	cargo run -- demo

test: setup
	scripts/setup.sh --deploy --api --ui
	cargo test --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --workspace --all-targets --features cuda -- -D warnings
