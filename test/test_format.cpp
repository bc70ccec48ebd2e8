#define BOOST_TEST_MODULE format
#include <boost/test/unit_test.hpp>
BOOST_AUTO_TEST_CASE(pending) { BOOST_TEST(false, "suite format not written yet"); }
