# Sourced by the recipes that train with DS2's noise augmentation (section 5.2), before
# parse_options.sh: the defaults of their augmentation options (recipes/common.sh's
# augment_options reads them) and $augment_usage for their usage text.
augment=true  # DS2's noise augmentation (true/false): generated noise (+ --noise-from) and simulated rooms
noise_from=""  # noise collections on disk for augmentation, comma-separated: MUSAN (noise/, music/, speech/) or any folder
noise_prob=0.4  # share of training utterances with noise (0-20 dB SNR, 1-3 clips), from the second epoch
reverb_prob=0.2  # share convolved with a simulated room's impulse response
speed_prob=0  # share played at 0.9x or 1.1x speed (not in DS2)
noise_opts=""  # more ds2 prepare noise options, e.g. "--train-clips 32"
rir_opts=""  # more ds2 prepare rirs options
augment_usage="[--augment $augment] [--noise-from DIRS] [--noise-prob $noise_prob] [--reverb-prob $reverb_prob] [--speed-prob $speed_prob]
  [--noise-opts \"OPTIONS\"] [--rir-opts \"OPTIONS\"]"
