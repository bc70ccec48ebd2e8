// tensor.cpp — to be written
