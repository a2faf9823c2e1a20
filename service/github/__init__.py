"""The configured owner's GitHub repositories and profile, cached and kept up under GitHub failures."""
