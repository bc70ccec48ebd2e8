// boost_json.cpp — Boost.JSON's sources, compiled into the fuzz build's
// library (instead of linking libboost_json) so that its parser is
// instrumented for coverage and checked by ASan+UBSan like the library.
#include <boost/json/src.hpp>
