// filesystem.cpp — to be written
