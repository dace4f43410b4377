"""The paper's method (Georgescu, KES 2023): a masked autoencoder (``mae``), reconstruction by masked
passes (``reconstruction``), the pseudo-abnormal module (``pseudo_abnormal``), the anomaly classifier
(``classifier``) and their training stages (``stages``)."""
