print("keystore-bench: see BENCHMARKS.md")
