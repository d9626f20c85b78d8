"""Building zoos: specs and their catalogue, planning and running trials (locally or on Ray
Tune), and the training loop with its workloads."""
