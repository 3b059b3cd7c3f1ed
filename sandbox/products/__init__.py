"""The products executed in the sandbox: verification templates, model training and evaluation."""
