"""Pure job logic: models, validation rules, algorithms, scheduling decisions."""
