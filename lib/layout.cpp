// layout.cpp — to be written
