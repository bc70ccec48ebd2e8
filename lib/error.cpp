// error.cpp — to be written
