"""Policies and harms: the toy models the engines and checks run on."""
