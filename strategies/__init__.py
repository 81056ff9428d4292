"""Federated strategies, one Flower ``Strategy`` per file, plus wrappers and client mods."""
