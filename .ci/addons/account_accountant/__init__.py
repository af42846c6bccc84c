# TEST-ONLY STAND-IN: intentionally empty.
