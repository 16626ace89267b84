"""Model building for fraudscore: data, features, K-Means, tuning, thresholds, bundles."""
