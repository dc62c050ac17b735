package benchreport

import "testing"

func TestGaugePassDoesAllItsWork(t *testing.T) {
	if got, want := gaugePass(), gaugeKeys*(gaugeKeys-1)/2; got != want {
		t.Fatalf("a pass summed %d, want %d", got, want)
	}
	if d := Gauge(3); d <= 0 {
		t.Fatalf("Gauge(3) = %s", d)
	}
}
