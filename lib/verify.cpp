// verify.cpp — to be written
