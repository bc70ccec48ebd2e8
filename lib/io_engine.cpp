// io_engine.cpp — to be written
