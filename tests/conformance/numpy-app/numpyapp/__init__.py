"""numpyapp: a Flower / NumPy app."""
