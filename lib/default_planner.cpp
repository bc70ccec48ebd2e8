// default_planner.cpp — to be written
