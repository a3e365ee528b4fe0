"""The PyTorch twin: the same decoder, data, optimizer and run directory as the JAX run, in PyTorch.

model.py mirrors jaxbench/model.py class for class; convert.py maps parameters between the two;
train.py is `jaxbench train --config.framework=torch`. Nothing on the JAX side imports this package.
"""
