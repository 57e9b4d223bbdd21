package webhook

// Observed is observed, for the tests of package webhook_test.
var Observed = observed
