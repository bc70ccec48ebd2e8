// terminal.cpp — to be written
