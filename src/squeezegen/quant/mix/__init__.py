"""Which type each UNet tensor gets: the tensor policy, activation importance, per-tensor
damage, the knapsack under a byte budget, and the baselines it is measured against."""
