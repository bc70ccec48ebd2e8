// synthetic.cpp — to be written
