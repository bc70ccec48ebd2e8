// data_file.cpp — to be written
