"""Runners, YAML configs, named experiments, reports and plots."""
