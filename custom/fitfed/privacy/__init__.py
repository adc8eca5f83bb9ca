"""fitfed's privacy machinery: differential privacy (accounting, club budgets, update-level DP, DP-SGD) and HE."""
